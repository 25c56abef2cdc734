"""provisiond: a bare-metal provisioning daemon.

It discovers servers over IPMI, PXE-boots them from templates, installs an agent
over SSH and hands machines to people and CI through an allocation API.
"""

__version__ = "0.1.0"
__all__ = ["__version__"]
