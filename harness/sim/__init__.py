"""The simulator's parts: the GPU replaced by a calibrated cost model.

- `hardware.py`: GPU presets (GPUSpec, load_hardware);
- `kv_capacity.py`: how many KV blocks fit on each GPU;
- `cost_model.py`: one engine step's predicted time, built from operators;
- `executor.py`: the engine's executor with the cost model as its clock.

harness/simulate.py puts them together with the engine's own scheduler and memory policies.
"""
