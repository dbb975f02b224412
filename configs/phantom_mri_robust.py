"""The default job, trained against the MRI-specific corruptions too (a candidate recipe).

The default trains with the seed's three corruptions (noise, blur, downsampling); this
variant adds Rician noise, k-space undersampling, motion ghosting and a bias field to the
training chain, with foreground z-score standardisation. BUILD_NOTES (session 4) compares it
with the default side by side.
"""

from configs import default


def get_config():
    c = default.get_config()
    c.model.standardize = "zscore_foreground"
    c.train_degrade.rician_noise = (0.02, 0.15)
    c.train_degrade.kspace_undersample = (0.15, 0.6)
    c.train_degrade.motion_ghosting = (2.0, 12.0)
    c.train_degrade.bias_field = (0.1, 0.6)
    return c
