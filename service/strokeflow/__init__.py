"""StrokeFlow: open CT/MR perfusion and diffusion analysis for acute stroke."""

__version__ = "0.1.0"
