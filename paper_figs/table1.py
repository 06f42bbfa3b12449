"""Table 1: model sizes and servers, and the KV cache slots each server has (the harness's KV sizing
under `system=paper`, harness/sim/kv_capacity.py, for the Figure 12 presets)."""

import matplotlib.pyplot as plt

from harness.sim.kv_capacity import kv_capacity

TITLE = "Table 1: model sizes and server configurations"
MODELS = [("opt-13b", "sharegpt_opt13b"), ("opt-66b", "sharegpt_opt66b"), ("opt-175b", "sharegpt_opt175b")]


def make(s):
    values, cells = {}, []
    for name, exp in MODELS:
        cfg = s.config(exp)
        cap = kv_capacity(cfg.model, cfg.hardware, cfg.system, cfg.tensor_parallel_size)
        tp = cfg.tensor_parallel_size
        values[f"{name}/kv_slots"] = cap.num_slots
        values[f"{name}/kv_memory_gib"] = cap.kv_bytes * tp / 2**30
        cells.append([
            name.upper().replace("OPT-", "OPT-"), f"{tp} x {cfg.hardware.name}",
            f"{cfg.model.weight_bytes / 1e9:.0f} GB", f"{cap.kv_bytes * tp / 2**30:.1f} GiB",
            f"{cap.num_slots / 1e3:.1f}K", f"{s.ref(f'{name}/kv_slots') / 1e3:.1f}K",
        ])  # fmt: skip
    fig, ax = plt.subplots(figsize=(8, 1.4))
    ax.axis("off")
    cols = ["Model", "GPUs", "Parameters", "KV cache memory", "Max KV slots", "Paper's slots"]
    table = ax.table(cellText=cells, colLabels=cols, loc="center", cellLoc="center")
    table.auto_set_font_size(False)
    table.set_fontsize(8)
    table.scale(1, 1.4)
    s.save(fig, "table1")
    return values
