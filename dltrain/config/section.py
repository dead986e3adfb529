"""What every config section is: a pydantic model that forbids unknown keys and non-finite
numbers, and says a union field's choices in one line."""

from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator

# What each field with a union type takes: its failure is this one line, not one per member.
_UNIONS = {
    "normalize": "auto, dataset, none, or {mean: [...], std: [...]} of equal length",
    "small_input": "true, false or auto",
    "freeze": "all_but_head, none, or a list of module-name prefixes",
    "class_weights": "none, balanced, or a list of weights (one per class, each >= 0)",
}


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)

    @field_validator(*_UNIONS, mode="wrap", check_fields=False)
    def _union_in_one_line(cls, value, handler, info: ValidationInfo):
        try:
            return handler(value)
        except ValidationError:
            raise ValueError(_UNIONS[info.field_name]) from None


def _nested(section: type[Section], description: str):
    """The field of a section within a section: by default, all of that section's defaults."""
    return Field(default_factory=section, description=description)


class NormalizeStats(Section):
    mean: list[float] = Field(min_length=1, description="Per-channel mean (of 0-1 pixels).")
    std: list[float] = Field(min_length=1, description="Per-channel standard deviation.")

    @field_validator("std")
    def _positive(cls, std: list[float], info: ValidationInfo) -> list[float]:
        if any(s <= 0 for s in std):
            raise ValueError("positive values")
        if "mean" in info.data and len(info.data["mean"]) != len(std):
            raise ValueError("as many values as mean")
        return std
