"""pagelab's OpenAI-compatible server: `pagelab serve MODEL` (python -m serving). The engine loop is
paged/async_engine.py; this package is the HTTP side (FastAPI, uvicorn, prometheus_client) and the
choice of backend: the real model on this machine, or the simulated GPU paced in wall time. It sits
beside the harness, not in the core, because its simulated backend is the harness's cost model."""
