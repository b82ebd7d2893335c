"""relm: RE-LM (vocabulary extension for unsupervised MT to low-resource languages) in PyTorch."""

__version__ = "0.1.0"
