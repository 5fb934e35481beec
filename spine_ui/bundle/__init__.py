"""Versioned model bundles: manifest + hashed files, runtime selection, creation, import and download."""
