"""Level 2, balanced DM training: CBDM's class-diversity regulariser on the noise-prediction loss
(``fairskin.diffusion.losses``; strength ``diffusion.cbdm_tau`` / ``cbdm_gamma`` unless the spec sets its own)."""

from fairskin.methods.spec import VariantSpec

VERSION = 1
METHODS = [VariantSpec(name="cbdm", weights="none", loss="cbdm")]
