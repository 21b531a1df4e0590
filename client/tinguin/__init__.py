"""The TINGUIN: the trusted window (paper 3.2) through which every security-critical input and output goes."""
