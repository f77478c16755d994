"""FairSkin: levels 1 and 2 together, FairSkin-C (class-balanced weights + CBDM) and FairSkin-S
(square-root weights + CBDM), the paper's two variants."""

from fairskin.methods.spec import VariantSpec

VERSION = 1
METHODS = [
    VariantSpec(name="fairskin_c", weights="cbrs", loss="cbdm"),
    VariantSpec(name="fairskin_s", weights="sqrs", loss="cbdm"),
]
