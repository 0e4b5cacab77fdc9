"""The SKU code grammar, one for every service that names a SKU."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

SKU_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,63}$"
SkuCode = Annotated[
    str, Field(pattern=SKU_PATTERN, description="1-64 letters, digits, . _ : -; a letter or digit first")
]
