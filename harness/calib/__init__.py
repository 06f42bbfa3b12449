"""Calibration on this machine: measure its operators (`profile.py`), check the simulator against
real execution (`sim_vs_real.py`); both time the model runner through `timing.py`."""
