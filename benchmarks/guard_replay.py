"""Replay gradtune-auto's structure gate and guard under other thresholds, without refitting.

    python benchmarks/guard_replay.py collect [--members ...] [--seeds 0 1 2] [--out build/guard-replay]
    python benchmarks/guard_replay.py replay [--out build/guard-replay]
                                      [--rule '{"margin": 0.1}'] [--rule '{"lower": null}'] ...
                                      [--gate '{"min_structure_auc": 0.6, "min_twin_auc": 0.7}']

A development tool for the label-free guard, on the development half of the stress suite
only (:mod:`gradtune.experiments.stress`; a report member is refused). ``collect`` fits
gradtune-auto once per member and seed with the structure gate open
(``min_structure_auc=0``, ``min_twin_auc=0``) and keeps, in ``--out/runs.jsonl`` (a rerun
resumes): the structure test's AUCs, the guard's inputs (``diagnostics["guard_inputs"]``, and
``"guard_inputs_next"``: the records of the cell sets judged when the first keeps the head),
and the test WGA and average accuracy of ERM, of the oracle (DFR with the validation rows'
true groups) and of every candidate refitted on both validation halves as the method
refits the one it chooses. The chosen candidate's refit must reproduce the fitted model's
test numbers exactly, or the run is refused.

``replay`` then decides every run again, for each ``--rule`` (fields of
:class:`~gradtune.selection.guard.GuardRule`; ``"lower": null`` drops the paired bootstrap
bound, ``"floor_values": null`` reads the floor on the value cells) and ``--gate``
(the two structure thresholds), with :func:`~gradtune.selection.guard.replay_guard`, and
prints the acceptance checks of ``benchmarks/stress.py`` for each: failing members,
median and mean ERM -> oracle gap closed, repaired runs. Candidate families other than
``"retrain"`` and inferences other than the first are not supported.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np

from gradtune._seeding import seed_streams
from gradtune.experiments.stress import STRESS_SUITE, build_member_bundle, suite_members
from gradtune.methods.auto_candidates import retrain_head
from gradtune.methods.base import erm_head
from gradtune.methods.gradtune_auto import SEED_STREAMS
from gradtune.methods.tuning import build_method, family_defaults
from gradtune.selection.audit import structure_gate_reason
from gradtune.selection.guard import replay_guards

sys.path.insert(0, str(Path(__file__).resolve().parent))
from stress import GAP_MIN, ORACLE, checks, evaluate  # noqa: E402  (the suite's own metrics and checks)

GATE_OPEN = {"min_structure_auc": 0.0, "min_twin_auc": 0.0}
DEFAULT_GATE = {"min_structure_auc": 0.6, "min_twin_auc": 0.7}


def _pair(d: dict) -> list[float]:
    return [float(d["wga"]), float(d["avg"])]


def _records(d: dict) -> list[dict]:
    """The guard records of one fit or stored run, in the order they judge (value_cells)."""
    return [d["guard_inputs"], *d.get("guard_inputs_next", [])]


def collect_one(member: str, seed: int, params: dict) -> dict:
    """One run's record: AUCs, guard inputs and every candidate's refitted test numbers."""
    m = STRESS_SUITE[member]
    bundle = build_member_bundle(m, seed)
    rec: dict = {"member": member, "seed": seed, "control": bool(m.control),
                 "erm": _pair(evaluate(erm_head(bundle), bundle))}
    oracle = build_method(ORACLE, family_defaults(ORACLE, m.data_family)).fit(bundle, seed=seed).model
    rec["oracle"] = _pair(evaluate(oracle, bundle))
    # one fit on the bundle's own halves: the guard is replayed, not the vote over dealings (split_votes)
    full = {**family_defaults("gradtune-auto", m.data_family), "split_votes": 1, **params, **GATE_OPEN}
    method = build_method("gradtune-auto", full)
    res = method.fit(bundle, seed=seed)
    d = res.diagnostics
    rec.update(auc=d.get("structure_auc"), twin_auc=d.get("twin_structure_auc"), reason=d.get("guard_reason"))
    if "guard_inputs" not in d:            # kept before the guard (coverage, no candidates)
        return rec
    held, sel = bundle.view("heldout"), bundle.view("selection")
    x_all = np.concatenate([held.features, sel.features])
    y_all = np.concatenate([held.labels, sel.labels])
    minority = np.isin(np.concatenate([held.index, sel.index]), np.asarray(d["inferred_minority_rows"]))
    g_all = 2 * y_all + minority
    first = d["inferences"][0]
    tests = []
    for c in d["candidates"]:
        if c["family"] == "erm":
            tests.append(rec["erm"])
            continue
        if c["family"] != "retrain" or c["inference"] != first:
            raise SystemExit(f"{member} seed {seed}: candidate {c['family']}/{c['inference']} is not supported "
                             "(replay refits 'retrain' candidates of the first inference only)")
        streams = seed_streams(seed, *SEED_STREAMS)      # the method's own refit draws
        head = retrain_head(x_all, y_all, g_all, float(c["setting"]), int(bundle.n_classes),
                            int(method.num_retrains), streams.rng("retrain"), streams.integer("solver"))
        tests.append(_pair(evaluate(head, bundle)))
    best = replay_guards(_records(d))[1].best
    fitted = _pair(evaluate(res.model, bundle))
    if tests[best] != fitted:
        raise SystemExit(f"{member} seed {seed}: the replayed choice's refit {tests[best]} differs from the "
                         f"fitted model's {fitted}; the store would not replay the method")
    rec.update(guard_inputs=d["guard_inputs"], guard_inputs_next=d.get("guard_inputs_next", []), candidate_test=tests,
               minority_loss=d.get("minority_loss"))
    return rec


def decide(rec: dict, gate: dict, rule: dict) -> tuple[list[float], bool]:
    """(test [WGA, avg], repaired?) of one stored run under a gate and guard rule."""
    closed = structure_gate_reason(rec["auc"], rec["twin_auc"], gate["min_structure_auc"], gate["min_twin_auc"])
    if closed is not None or "guard_inputs" not in rec:
        return rec["erm"], False
    best = replay_guards(_records(rec), **rule)[1].best
    return rec["candidate_test"][best], best != 0


def summarize(runs: list[dict], gate: dict, rule: dict,
              decider: Callable[[dict], tuple[list[float], bool]] | None = None) -> tuple[list[str], int]:
    """The stress suite's acceptance lines for gradtune-auto under (gate, rule), and its repaired runs;
    ``decider`` (a stored run -> (test [WGA, avg], repaired?)) replaces the gate and guard when given."""
    by: dict[str, list[dict]] = {}
    for r in runs:
        by.setdefault(r["member"], []).append(r)
    means: dict = {}
    repaired = 0
    for mem, rs in by.items():
        got = [decider(r) if decider else decide(r, gate, rule) for r in rs]
        repaired += sum(rep for _, rep in got)
        for name, rows in (("erm", [r["erm"] for r in rs]), (ORACLE, [r["oracle"] for r in rs]),
                           ("gradtune-auto", [g for g, _ in got])):
            means[(mem, name)] = {"wga": float(np.mean([x[0] for x in rows])),
                                  "avg": float(np.mean([x[1] for x in rows]))}
        means[(mem, "gradtune-auto")]["kept"] = float(np.mean([not rep for _, rep in got]))
    return checks(means, sorted(by)), repaired


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("command", choices=("collect", "replay"))
    ap.add_argument("--members", nargs="+", default=None, help="development members (default: all)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--param", action="append", default=[], metavar="NAME=JSON",
                    help="a gradtune-auto parameter for collect (the gate's two thresholds are set open)")
    ap.add_argument("--out", type=Path, default=Path("build/guard-replay"))
    ap.add_argument("--rule", action="append", default=[], metavar="JSON",
                    help='guard overrides to replay, e.g. \'{"margin": 0.1}\' (default: the recorded rule)')
    ap.add_argument("--gate", default=json.dumps(DEFAULT_GATE), metavar="JSON",
                    help="min_structure_auc and min_twin_auc to replay the structure gate with")
    args = ap.parse_args(argv)
    dev = [m.name for m in suite_members("dev")]
    members = args.members or dev
    refused = [m for m in members if m not in dev]
    if refused:
        ap.error(f"only development members can be replayed (the report half is read by benchmarks/stress.py "
                 f"alone); not development members: {refused}")
    store = args.out / "runs.jsonl"
    if args.command == "collect":
        params = {}
        for p in args.param:
            name, _, value = p.partition("=")
            params[name] = json.loads(value)
        args.out.mkdir(parents=True, exist_ok=True)
        done = set()
        if store.exists():
            done = {(r["member"], r["seed"]) for r in map(json.loads, store.read_text().splitlines())}
        for mem in members:
            for seed in args.seeds:
                if (mem, seed) in done:
                    continue
                rec = collect_one(mem, seed, params)
                with open(store, "a") as f:       # one line per run: an interrupted collect resumes
                    f.write(json.dumps(rec) + "\n")
                    f.flush()
                    os.fsync(f.fileno())
                print(f"{mem} seed {seed}: stored", flush=True)
        return 0
    if not store.exists():
        ap.error(f"no store at {store}: run `python benchmarks/guard_replay.py collect --out {args.out}` first")
    runs = [r for r in map(json.loads, store.read_text().splitlines()) if r["member"] in members]
    gate = {**DEFAULT_GATE, **json.loads(args.gate)}
    for rule in [json.loads(r) for r in args.rule] or [{}]:
        lines, repaired = summarize(runs, gate, rule)
        print(f"\n## gate {gate}, guard {rule or 'as recorded'}: {repaired} of {len(runs)} runs repaired")
        print("\n".join(lines[-2:]))
        failing = [line for line in lines[:-2] if "not met" in line or ("control" in line and "100%" not in line)]
        if failing:
            print("\n".join(failing))
    print(f"\n(members whose oracle beats ERM by less than {100 * GAP_MIN:.0f} WGA points have no gap)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
