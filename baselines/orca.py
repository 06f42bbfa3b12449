"""Orca, reimplemented as in the paper (section 6.1): iteration-level scheduling, one contiguous chunk
per request, three ways to size the chunk's output reservation."""

from __future__ import annotations

from baselines.contiguous import ContiguousManager, next_pow2
from paged.sequence import SequenceGroup


class OrcaMax(ContiguousManager):
    """Reserves up to the model's maximum length (2048 for OPT), whatever the request will produce."""

    name = "orca_max"

    def reserved_output(self, group: SequenceGroup) -> int:
        return self.max_model_len - group.num_prompt_tokens


class OrcaPow2(ContiguousManager):
    """Reserves the true output length rounded up to a power of two (at most 2x too much)."""

    name = "orca_pow2"

    def reserved_output(self, group: SequenceGroup) -> int:
        return next_pow2(group.sampling_params.max_tokens)


class OrcaOracle(ContiguousManager):
    """Reserves exactly the true output length: an upper bound no real system can reach."""

    name = "orca_oracle"

    def reserved_output(self, group: SequenceGroup) -> int:
        return group.sampling_params.max_tokens
