"""condroute: conditional routing for mitmproxy.

    mitmdump -s addon/conditional_routing.py --set condroute_rules=rules/example.yaml
"""
import os
import sys

try:
    from condroute.mitm.addon import ConditionalRouting
    from condroute.mitm.compat import answer_every_hook_name
except ImportError:  # not installed: use the package beside this file
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from condroute.mitm.addon import ConditionalRouting
    from condroute.mitm.compat import answer_every_hook_name

addons = [ConditionalRouting()]

# mitmproxy asks this module, like every addon, for a handler of each event it dispatches (eight per
# request): every hook name is given an attribute of None, which costs less than a missing one (see
# answer_every_hook_name). The handlers are on the ConditionalRouting object above.
answer_every_hook_name(globals())
