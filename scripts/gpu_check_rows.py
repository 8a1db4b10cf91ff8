#!/usr/bin/env python3
"""Rows of scripts/gpu-check's summary table: `gpu_check_rows.py STEP FILE...` prints
`STATUS<TAB>DETAIL` for one step from the files the agent wrote (plain Python 3.8+, no
packages needed; pyarrow is used when present)."""
import json
import sys


def load(path):
    with open(path) as f:
        return json.load(f)


def num(v, fmt):
    return "null" if v is None else format(v, fmt)


def gpus(probe):
    return ", ".join(g["name"] for g in probe["node"]["gpus"]) or "no GPU"


def probe(path):
    r = load(path)
    c = r["cuda"]
    cuda = "usable" if c["usable"] else "not usable: " + c["detail"]
    return "ok", f"{gpus(r)} · driver {r['node']['driver_version']} · cuda {cuda}"


def sampler(path):
    costs = [c for c in load(path).get("sampler_cost", []) if c["per_sample_us"] is not None]
    if not costs:
        return "ok", "no sensor here to sample"
    return "ok", "; ".join(f"{c['sensor']} {c['per_sample_us']:.1f} µs/sample, {c['core_share_pct']:.3f} % of a core at {c['hz']:.0f} Hz" for c in costs)


def f2(path):
    r = load(path)
    e = r["energy"]
    c, i = e["counter_j"], e["integrated_j"]
    if c is None or i is None:
        return "FAIL", f"counter {c} J, integrated {i} J: NVML gave no energy"
    off = (c - i) / c * 100
    return ("ok" if abs(off) <= 2 else "FAIL"), (
        f"counter {c:.1f} J vs integrated {i:.1f} J ({off:+.2f} %, target ≤ 2 %) over {r['duration_s']:.1f} s; "
        f"idle {num(e['baseline_w'], '.1f')} W; warnings {[w['code'] for w in r['warnings']]}")


def tokens(cpu, gpu):
    a = [json.loads(l) for l in open(cpu)]
    b = [json.loads(l) for l in open(gpu)]
    same = sum(x["output"] == y["output"] for x, y in zip(a, b))
    ok = same == len(a) == len(b) and len(a) > 0
    return ("ok" if ok else "FAIL"), f"{same} of {len(a)} prompts give the same greedy tokens on the GPU as on the CPU"


def candle(path):
    r = load(path)
    load_info, lat = r["load"], r["latency"] or {}
    ttft = (lat.get("ttft_ms") or {}).get("p50")
    return "ok", (
        f"batch {r['spec']['batch_size']} ({r['spec']['precision']}): {num(r['throughput']['output_tokens_per_s'], '.1f')} output tok/s · "
        f"{num(r['energy']['j_per_output_token'], '.4f')} J/token · TTFT p50 {num(ttft, '.1f')} ms · "
        f"memory {num(load_info['memory_mb'], '.0f')} MB ({load_info.get('memory_of')}), peak {num(load_info['peak_memory_mb'], '.0f')} MB")


def server(path, requests_parquet):
    r = load(path)
    s, e = r["serving"], r["energy"]
    try:
        import pyarrow.parquet as pq
        parts = [x["energy_j"] for x in pq.read_table(requests_parquet).to_pylist() if x["energy_j"] is not None]
        summed = f"per request sums to {sum(parts):.2f} J" if parts else "no per-request energy"
    except Exception as e:  # no pyarrow, or one too old to read the file: say so, do not fail
        summed = f"per-request energy not summed ({type(e).__name__}: {e})"
    ok = s["errors"] == 0 and s["requests"] > 0
    return ("ok" if ok else "FAIL"), (
        f"{s['requests']} requests ({s['errors']} failed), {r['tokens']['output']} tokens by {s['token_count_method']} · "
        f"{num(r['throughput']['output_tokens_per_s'], '.1f')} tok/s · {num(e['j_per_output_token'], '.4f')} J/token · "
        f"window {num(e['total_j'], '.1f')} J, {summed} · TTFT p50 {num(s['ttft_ms']['p50'], '.1f')} ms · "
        f"memory {num(r['load']['memory_mb'], '.0f')} MB ({r['load'].get('memory_of')}) · warnings {[w['code'] for w in r['warnings']]}")


def title(path):
    return "", gpus(load(path))


STEPS = {"probe": probe, "sampler": sampler, "f2": f2, "tokens": tokens, "candle": candle, "server": server, "title": title}

if __name__ == "__main__":
    try:
        status, detail = STEPS[sys.argv[1]](*sys.argv[2:])
    except Exception as e:  # a missing or unexpected file is a failed step, said plainly
        status, detail = "FAIL", f"cannot read the step's output: {type(e).__name__}: {e}"
    print(f"{status}\t{detail}")
