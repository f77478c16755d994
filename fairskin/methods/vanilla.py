"""The baseline: the paper's fine-tune with the noise-prediction loss and no resampling."""

from fairskin.methods.spec import VariantSpec

VERSION = 1
METHODS = [VariantSpec(name="vanilla", weights="none", loss="dm")]
