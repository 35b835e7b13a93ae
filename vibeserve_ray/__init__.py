"""vibeserve_ray: search for, build, validate and deploy a bespoke LLM serving system on Ray."""

__version__ = "0.1.0"
