"""The recommended caps as requests to the actuators that set them:

- jouletrace's own guarded admin API, `POST /api/v1/powercap` on each exporter's metrics port
  (docs/powercap.md#actuation): one `curl` per exporter and step, the exporter's GPUs named by
  index. A change larger than the exporter's `--powercap-max-step` is refused, so the way down is
  in steps of at most `max_step_w`, `cooldown_s` apart (the exporter's defaults unless given);
  `DELETE /api/v1/powercap` puts the original limits back.
- NVIDIA Dynamo's power agent, a DaemonSet that sets each GPU's NVML limit from the annotation
  `dynamo.nvidia.com/gpu-power-limit` (whole watts) of the pod running on it: one `kubectl annotate`
  per pod (from `jouletrace_gpu_pod_info`, node mode). In a DynamoGraphDeployment the annotation is
  the worker component's `podTemplate`'s, which the operator copies to the pods; set it there."""

from __future__ import annotations

import collections
import json
import math
import shlex

from jouletrace.exporter.powercap.actuation import Policy

from .plan import GroupPlan

ANNOTATION = "dynamo.nvidia.com/gpu-power-limit"


def steps_down(current_w: float, cap_w: float, max_step_w: float) -> list[float]:
    """The limits from `current_w` to `cap_w`, each at most `max_step_w` from the one before (whole
    watts as ints)."""
    out, w = [], current_w
    while w - cap_w > 1e-9:
        w = max(cap_w, w - max_step_w)
        out.append(int(w) if w == int(w) else w)
    return out


def admin_api(plans: list[GroupPlan], label: str, token: str, policy: Policy = Policy()) -> list[str]:
    """Shell lines: the curl requests that set each group's cap through the exporters' admin API,
    authorized by `token` (a shell word: the CLI passes `$(cat FILE)`)."""
    lines = [f"# jouletrace admin API (docs/powercap.md#actuation): steps of at most {policy.max_step_w:g} W, "
             f"{policy.cooldown_s:g} s apart (--powercap-max-step, --powercap-cooldown)"]
    for p in plans:
        if p.cap_w is None or not math.isfinite(p.cap_w):
            continue
        cap = math.floor(p.cap_w)
        rounds: dict[int, list[str]] = collections.defaultdict(list)
        for instance, gpus in _by_instance(p).items():
            by_current = collections.defaultdict(list)
            for g in gpus:
                by_current[g.current_w].append(g)
            for current, same in sorted(by_current.items()):
                for k, watts in enumerate(steps_down(current, cap, policy.max_step_w)):
                    body = json.dumps({"watts": watts, "gpus": sorted(int(g.index) for g in same),
                                       "reason": f"power budget {label}={p.group}: {p.budget_w:g} W for "
                                                 f"{p.servers_fit} servers"})
                    rounds[k].append(f"curl -fsS -H \"Authorization: Bearer {token}\" -d {shlex.quote(body)} "
                                     f"http://{instance}/api/v1/powercap")
        if rounds:
            lines.append(f"# {label}={p.group}: {cap} W per GPU")
        for k in sorted(rounds):
            if k:
                lines.append(f"sleep {math.ceil(policy.cooldown_s)}")
            lines.extend(rounds[k])
    return lines


def dynamo(plans: list[GroupPlan], label: str) -> list[str]:
    """Shell lines: a `kubectl annotate` per pod for Dynamo's power agent."""
    lines = [f"# NVIDIA Dynamo power agent: {ANNOTATION} (whole W) on each pod; in a DynamoGraphDeployment set it "
             "on the worker component's podTemplate instead"]
    for p in plans:
        if p.cap_w is None or not math.isfinite(p.cap_w):
            continue
        cap = math.floor(p.cap_w)
        pods = sorted(p.pods)
        lines.append(f"# {label}={p.group}: {cap} W per GPU" + ("" if pods else
                     " (no jouletrace_gpu_pod_info: annotate the pods on its nodes " + ", ".join(p.nodes) + ")"))
        for namespace, pod in pods:
            lines.append(f"kubectl annotate pod --overwrite -n {shlex.quote(namespace)} {shlex.quote(pod)} "
                         f"{ANNOTATION}={cap}")
    return lines


def _by_instance(p: GroupPlan) -> dict[str, list]:
    out = collections.defaultdict(list)
    for g in p.gpus:
        if g.index.isdigit() and g.current_w > math.floor(p.cap_w):
            out[g.instance].append(g)
    return dict(sorted(out.items()))
