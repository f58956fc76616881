"""condroute: conditional routing for mitmproxy.

    mitmdump -s addon/conditional_routing.py --set condroute_rules=rules/example.yaml
"""
import os
import sys

try:
    from condroute.mitm import ConditionalRouting
except ImportError:  # not installed: use the package beside this file
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from condroute.mitm import ConditionalRouting

addons = [ConditionalRouting()]
