"""Search spaces over a config's keys (dotted), sampled with a random source the caller owns.

A workflow passes `workflow.random()`, so the same sweep seed gives the same trials on every replay.
"""

from __future__ import annotations

import math
import random
from typing import Annotated, Any, Literal, TypeVar, get_origin

from pydantic import BaseModel, ConfigDict, Field, model_validator

C = TypeVar("C", bound=BaseModel)


class _Dim(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)  # strict where read from a file (config_loading)


class Uniform(_Dim):
    type: Literal["uniform"]
    low: float
    high: float

    @model_validator(mode="after")
    def _ordered(self) -> Uniform:
        if not self.low < self.high:
            raise ValueError(f"uniform needs low < high (got {self.low}, {self.high})")
        return self

    def sample(self, rng: random.Random) -> float:
        return rng.uniform(self.low, self.high)


class LogUniform(Uniform):
    type: Literal["loguniform"]  # type: ignore[assignment]

    @model_validator(mode="after")
    def _positive(self) -> LogUniform:
        if self.low <= 0:
            raise ValueError(f"loguniform needs low > 0 (got {self.low})")
        return self

    def sample(self, rng: random.Random) -> float:
        return math.exp(rng.uniform(math.log(self.low), math.log(self.high)))


class IntRange(_Dim):
    type: Literal["int"]
    low: int
    high: int

    @model_validator(mode="after")
    def _ordered(self) -> IntRange:
        if not self.low <= self.high:
            raise ValueError(f"int needs low <= high (got {self.low}, {self.high})")
        return self

    def sample(self, rng: random.Random) -> int:
        return rng.randint(self.low, self.high)


class Choice(_Dim):
    type: Literal["choice"]
    values: list[Any] = Field(min_length=1)

    def sample(self, rng: random.Random) -> Any:
        return self.values[rng.randrange(len(self.values))]


Dimension = Annotated[Uniform | LogUniform | IntRange | Choice, Field(discriminator="type")]


class SearchSpace(BaseModel):
    """Dotted config keys → dimensions (`SweepSpec` checks them against its base config)."""

    model_config = ConfigDict(extra="ignore", frozen=True)
    params: dict[str, Dimension] = Field(min_length=1)

    def check_keys(self, base: BaseModel) -> None:
        """Every key must name a key of the base config (any key under a free-form section such as a custom loop's
        `train_loop_config`): a typo is an error, not a no-op."""
        known = _config_keys(type(base))
        free = {name for name, field in type(base).model_fields.items() if get_origin(field.annotation) is dict}
        unknown = sorted(k for k in self.params if k not in known and k.split(".")[0] not in free)
        if unknown:
            kind = getattr(base, "kind", "text")
            example = "train_loop_config.lr" if free else "lr"
            raise ValueError(
                f"unknown search-space keys {unknown}; they must be keys of the {kind} config, like {example!r}"
            )

    def sample(self, rng: random.Random) -> dict[str, Any]:
        """One draw per key in sorted key order, so adding a key never reshuffles the others' sequence position."""
        return {key: self.params[key].sample(rng) for key in sorted(self.params)}


def _config_keys(model: type[BaseModel], prefix: str = "") -> set[str]:
    keys = set()
    for name, field in model.model_fields.items():
        keys.add(prefix + name)
        ann = field.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            keys |= _config_keys(ann, f"{prefix}{name}.")
    return keys


def apply(base: C, params: dict[str, Any]) -> C:
    """The base config with dotted keys replaced, validated again (a sampled batch size must still split evenly)."""
    data = base.model_dump()
    for key, value in params.items():
        node = data
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ValueError(f"{key}: {part!r} of the base config is {node!r}, not a section")
        node[leaf] = value
    return type(base).model_validate(data)
