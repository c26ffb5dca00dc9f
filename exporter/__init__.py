"""GPU energy sampling, span intake, attribution and export."""
