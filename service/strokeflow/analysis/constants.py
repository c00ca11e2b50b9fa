"""Physical constants used to turn deconvolution output into clinical units."""

#: Brain tissue density (g/mL), to express flow and volume per 100 g of tissue.
BRAIN_DENSITY_G_PER_ML = 1.04

#: Haematocrit correction k_H = (1 - Hct_large) / (1 - Hct_small) = (1 - 0.45) / (1 - 0.25):
#: contrast stays in plasma, and capillary haematocrit is lower than arterial.
HEMATOCRIT_FACTOR = 0.73
