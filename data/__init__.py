"""Dataset readers and writers; every reader hands the same sample layout to the scripts.

`data.microlensing_h5`: the HDF5 schema written by `simulate.py --task microlensing`.
`data.photometry`: text photometry as users have it (time, magnitude, error; IPAC, gzip).
`data.lightcurves`: light curve → (T, 4) features, the same code for simulated and real curves.
`data.microlensing`: the task's data: cached HDF5 features, the split, batches, prediction inputs.
`data.cache`: the once-per-node shared-memory RAM cache.
"""
