"""ZS Texturing core: noise, attention, synchronisation and sampling (bpy never; torch
only in the modules marked (T)). Importing the package itself loads nothing heavy."""

__version__ = "0.1.0"
