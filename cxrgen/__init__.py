"""cxrgen: chest X-ray report generation with CXR-LLaVA-v2 and rigorous, offline evaluation."""

__version__ = "0.2.0"
