"""The research harness around the engine, by role (each module's docstring says more):

- front door: `__main__.py` (python -m harness, Hydra), `config.py` (the schema), `conf/` (presets),
  `experiment.py` (points, resume, capacity table), `capacity.py`, `results.py` (the results contract,
  atomic writes), `plots.py`;
- one server: `server.py` (ServerConfig, the engine and memory settings), `simulate.py` (SimConfig, the
  one engine builder for backend sim or real, `simulate()`);
- workloads and metrics: `workload.py` (Request, Workload, the built-in generators), `traces.py` (a
  user's files and real traces), `prefix_workloads.py` (system prompts, multi-turn), `metrics.py`;
- `sim/`: the simulator's parts (cost model, KV capacity, hardware presets, simulated executor);
- `calib/`: this machine's operator profile and the simulator checked against real runs.

Only `config.py` and `__main__.py` import Hydra; the core packages (paged, kernels, baselines) never
import the harness.
"""
