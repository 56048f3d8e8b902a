"""Dataset readers and writers; every reader hands the same sample layout to the scripts.

`data.microlensing_h5`: the HDF5 schema written by `simulate.py --task microlensing`.
"""
