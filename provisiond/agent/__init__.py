"""The machine agent, shipped as files rather than imported.

``agent.py`` is a stdlib-only Python 3 program that the deploy engine copies to
``/opt/provisiond-agent/agent.py`` on a deployed machine (the inspection ramdisk
carries it too), with ``lldp.py`` beside it (LLDP frames, which it imports) and
``provisiond-agent.service`` (systemd) or ``provisiond-agent.init`` (busybox /
sysvinit) to run it. Nothing in the daemon imports the agent (the virtual rack's
switch uses ``lldp``); :data:`AGENT_DIR` locates the files for upload.
"""

from pathlib import Path

AGENT_DIR = Path(__file__).parent
