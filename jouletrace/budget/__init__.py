"""`jouletrace plan budget`: how many servers a rack's, row's or PDU's power budget holds, from the
power measured together over weeks, and the per-GPU caps that keep it within the budget
(docs/power-budget.md#planning). `prometheus` reads the series, `analysis` does the maths,
`plan` puts them together, `report` writes the table and plot, `actuators` the cap requests."""
