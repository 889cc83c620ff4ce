"""Tables of the three-sample study (docs/training.md, docs/l1.md) from finished runs.

    python bench/study.py DIR [--baselines] [--cross ROW] [--plot OUT.png --rtl RTLDIR]

DIR holds one sample per kind, ``DIR/<kind>/{train,val,test}.h5`` (``qpelican data simulate``, kinds
``contained``, ``top``, ``topmpi``), and the runs ``DIR/runs/<kind>/<row>/`` (``qpelican fit --out``).
Every run of a kind is scored on that kind's test jets, so each column compares like with like.

* default: one markdown table, AUC / 1/eps_B at eps_S = 0.3 per row and kind (mean ± std over seeds
  where a run has several, then its best seed by validation loss);
* ``--baselines``: the two jet-mass baselines from the same 16 and from all 80 constituents, fitted
  on each kind's training jets (cached in ``DIR/mass_baselines.json``);
* ``--cross ROW``: ROW trained on one kind and scored on the test jets of every kind
  (``qpelican evaluate``'s JSON in ``DIR/cross/<ROW>_<train>_on_<test>.json``);
* ``--scan KIND``: the Level-1 rows against N (``l1_<N>``; ``l1_16`` for N = 16; N = 80 from the
  float ``alpha80_float`` row, whose firmware would not fit) with both mass baselines from the same N candidates (each run's results.json) and, where ``RTLDIR/<kind>_<row>``
  holds an export-rtl report, its LUT/FF/DSP and latency;
* ``--plot OUT.png --rtl RTLDIR``: test AUC against LUTs (``RTLDIR/<kind>_<row>/report.json``
  of ``qpelican export-rtl``), one marker per kind.
"""
import argparse
import json
import os

from qpelican.config.recipe import load_recipe
from qpelican.training.results import mass_baselines
from qpelican.training.splits import load_splits

RECIPES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "recipes")
KINDS = {"contained": "contained", "top": "top-matched", "topmpi": "top-matched, MPI on"}
ROWS = {  # row directory -> label
    "flagship_bn": "**flagship `c2_8bit`** (p4, alpha, N = Nbar = 16, masked BatchNorm folded into the 8-bit layers), 120 + 20 epochs",
    "float16_bn": "its float (`c2_alpha_float`, N = Nbar = 16, `--set model.batchnorm=true`), 140 epochs",
    "plain16_bn": "flagship without alpha (`--set model.alpha=false`)",
    "c10_16_bn": "flagship with C = 10 (`c10_8bit`, N = 16, alpha, BatchNorm)",
    "ref16": "reference configuration (`c2_reference_float`: beams, masked BatchNorm, dropout 0.05) at N = 16, float",
    "flagship": "`c2_8bit` without BatchNorm (`--set model.batchnorm=false`, the flagship before)",
    "flagship3": "the same, seeds 1 and 2 (recipe with `seed: 1`, `seeds: 2`): mean ± std; best by validation loss",
    "float16": "its float (`c2_alpha_float`, N = Nbar = 16), 140 epochs",
    "plain16": "without BatchNorm and alpha",
    "c10_16": "C = 10, alpha, N = 16, 8 bits, no BatchNorm (`c10_8bit`)",
    "flagship_do": "without BatchNorm, with the paper's dropout 0.05 (`--set model.dropout=0.05`)",
    "alpha80_float": "`c2_alpha_float` on 80 constituents (Nbar = 49), float",
    "l1_16": "`l1_c2_16` without BatchNorm (Level-1 candidates, N = 16, 8 bits; `--set model.batchnorm=false`)",
    "l1_16_float": "`l1_c2_16` in float",
    "bnl1_16": "`l1_c2_16` with masked BatchNorm folded into the 8-bit layers (without the beam and dropout)",
    "l1b_do_16": "`l1_c2_16` as shipped: the beam, dropout 0.05, folded BatchNorm, 6 starts",
    "l1_8": "`l1_c2_16` at N = 8", "l1_12": "`l1_c2_16` at N = 12", "l1_24": "`l1_c2_16` at N = 24",
    "l1_32": "`l1_c2_16` at N = 32",
    "tuned": "`qpelican tune recipes/l1_c2_16.yaml --cost luts` best point, retrained (120 + 20 epochs)",
}


def _load(path):
    return json.load(open(path)) if os.path.exists(path) else None


def cell(m):
    """'AUC / 1/eps_B@0.3' of a results or evaluate dict, with the seed spread when there is one."""
    if not m:
        return "not run"
    s = m.get("seeds_summary")
    if s:
        return (f"{s['auc']['mean']:.4f} ± {s['auc']['std']:.4f} / {s['rej30']['mean']:.0f} ± {s['rej30']['std']:.0f}; "
                f"best {m['auc']:.4f} / {m['rej30']:.0f}")
    return f"{m['auc']:.4f} / {m['rej30']:.0f}"


def table(header, rows):
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def run_rows(d):
    rows = []
    for row, label in ROWS.items():
        ms = [_load(f"{d}/runs/{k}/{row}/results.json") for k in KINDS]
        if any(ms):
            rows.append([label] + [cell(m) for m in ms])
    return rows


def baselines(d):
    """Both mass baselines from 16 and 80 constituents per kind (p4), and from 16 Level-1 candidates."""
    cache = f"{d}/mass_baselines.json"
    out = _load(cache) or {}
    for k in KINDS:
        for tag, sets in (("16", ["data.n_constituents=16"]), ("80", ["data.n_constituents=80"]),
                          ("l1_16", ["data.n_constituents=16", "data.format=l1"])):
            if f"{k}/{tag}" in out or not os.path.exists(f"{d}/{k}/test.h5"):
                continue
            rec = load_recipe(os.path.join(RECIPES, "c2_float.yaml")).with_overrides(sets=sets)
            b = mass_baselines(load_splits(rec, f"{d}/{k}", progress=False))
            out[f"{k}/{tag}"] = {key: {"auc": v[0]["auc"], "rej30": v[0]["rej30"], "method": v[0]["method"]}
                                 for key, v in b.items()}
            with open(cache, "w") as f:
                json.dump(out, f, indent=1)
    names = {"baseline_window": "top-mass window", "baseline": "jet-mass likelihood ratio"}
    rows = []
    for tag, what in (("80", "all 80 constituents"), ("16", "16 leading constituents"),
                      ("l1_16", "16 Level-1 candidates on the grid")):
        for key, name in names.items():
            rows.append([f"{name}, {what}"] + [cell(out.get(f"{k}/{tag}", {}).get(key)) for k in KINDS])
    return rows


def cross(d, row):
    rows = []
    for tr, label in KINDS.items():
        cells = []
        for te in KINDS:
            m = _load(f"{d}/runs/{tr}/{row}/results.json") if te == tr else _load(f"{d}/cross/{row}_{tr}_on_{te}.json")
            cells.append(cell(m))
        rows.append([f"trained on {label}"] + cells)
    return rows


def scan(d, kind, rtl):
    rows = []
    for n, row in [(n, f"l1_{n}") for n in (8, 12, 16, 24, 32)] + [("80, p4 `c2_alpha_float`, float", "alpha80_float")]:
        m = _load(f"{d}/runs/{kind}/{row}/results.json")
        if not m:
            continue
        r = _load(f"{rtl}/{kind}_{row}/report.json")
        hw = ["not exported"] * 4
        if r:
            t = r["total"]
            src = "Yosys" if t["source"] == "yosys_dsp" else "da4ml est."
            hw = [f"{t['lut']:,} ({src})", f"{t['ff']:,}", f"{t['dsp']:,}", f"{t['cycles']} = {t['latency_ns']:g} ns"]
        rows.append([str(n), cell(m), cell(m["baseline"]), cell(m["baseline_window"]), f"{m['bops']:,}"] + hw)
    return rows


def plot(d, rtl, out):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for k, label in KINDS.items():
        pts = []
        for row in ROWS:
            m, r = _load(f"{d}/runs/{k}/{row}/results.json"), _load(f"{rtl}/{k}_{row}/report.json")
            if m and r:
                pts.append((r["total"]["lut"], m["auc"], row))
        if pts:
            pts.sort()
            ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-", label=label)
            for x, y, row in pts:
                ax.annotate(row, (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points")
    ax.set_xscale("log")
    ax.set_xlabel("LUTs (qpelican export-rtl report.json, total)")
    ax.set_ylabel("test AUC")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    print(f"wrote {out}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("dir")
    ap.add_argument("--baselines", action="store_true")
    ap.add_argument("--cross", metavar="ROW")
    ap.add_argument("--scan", metavar="KIND")
    ap.add_argument("--plot", metavar="OUT.png")
    ap.add_argument("--rtl", metavar="RTLDIR")
    a = ap.parse_args()
    header = ["model (AUC / 1/eps_B at eps_S = 0.3)"] + list(KINDS.values())
    rows = (baselines(a.dir) if a.baselines else []) + run_rows(a.dir)
    print(table(header, rows))
    if a.cross:
        print()
        print(table([f"`{a.cross}` trained on \\ tested on"] + list(KINDS.values()), cross(a.dir, a.cross)))
    if a.scan:
        print()
        print(table(["N", "`l1_c2_16` at N", "mass likelihood, same N", "mass window, same N", "BOPs", "LUT", "FF",
                     "DSP48E2", "latency"], scan(a.dir, a.scan, a.rtl or a.dir)))
    if a.plot:
        plot(a.dir, a.rtl or a.dir, a.plot)
    for k in KINDS:  # the facts a reader of the table needs: jets and best epochs
        for row in ROWS:
            m = _load(f"{a.dir}/runs/{k}/{row}/results.json")
            if m:
                t = m["timing"]
                print(f"{k}/{row}: train {m['data']['train_jets']} test {m['test_jets']} jets, best epoch "
                      f"{m['best_epoch']}, {t['train_seconds']:.0f} s ({t['jets_per_second']:.0f} jets/s)")


if __name__ == "__main__":
    main()
