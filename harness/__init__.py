"""The Hydra front door, the simulator, metrics and plots (the simulator and harness issues).
Only this package and conf/ import Hydra."""
