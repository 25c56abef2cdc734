"""The machine agent, shipped as files rather than imported.

``agent.py`` is a single stdlib-only Python 3 program that the deploy engine
copies to ``/opt/provisiond-agent/agent.py`` on a deployed machine (or that an
inspection ramdisk carries), with ``provisiond-agent.service`` (systemd) or
``provisiond-agent.init`` (busybox / sysvinit) to run it. Nothing in the daemon
imports it; :data:`AGENT_DIR` locates the files for upload.
"""

from pathlib import Path

AGENT_DIR = Path(__file__).parent
