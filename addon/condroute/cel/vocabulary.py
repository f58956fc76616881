"""The names a ``cel:`` expression may use, besides the helper functions (see :mod:`.helpers`):
the variables, the fields of ``request``, type names, and the standard CEL functions, methods and
macros that both engines support. The checker (:mod:`.check`) holds expressions to this list and
the engines (:mod:`.engines`) declare these variables."""
from __future__ import annotations

# the variables an expression may read, and their CEL types (their values: cel.policy.VARIABLES)
VARIABLE_TYPES = {"req_headers": "dyn", "req_method": "dyn", "req_path": "dyn", "req_querystring": "dyn",
                  "req_params": "dyn", "request": "dyn", "client_ip": "dyn", "jwt": "dyn", "JWT": "dyn",
                  "now": "timestamp"}
ROOT_VARS = tuple(VARIABLE_TYPES)
REQUEST_FIELDS = ("method", "scheme", "host", "port", "path", "query", "headers", "cookies")
TYPE_NAMES = frozenset({"int", "uint", "double", "bool", "string", "bytes", "list", "map", "null_type", "type"})

# the standard CEL functions both engines support: name -> allowed argument counts
STD_GLOBAL = {"size": {1}, "int": {1}, "uint": {1}, "double": {1}, "string": {1}, "bytes": {1}, "bool": {1},
              "duration": {1}, "timestamp": {1}, "type": {1}, "dyn": {1}, "has": {1}, "matches": {2}}
_TS_METHODS = ("getFullYear", "getMonth", "getDate", "getDayOfMonth", "getDayOfWeek", "getDayOfYear", "getHours",
               "getMinutes", "getSeconds", "getMilliseconds")
STD_METHODS: dict[str, set[int]] = {"size": {0}, "contains": {1}, "startsWith": {1}, "endsWith": {1}, "matches": {1},
                                    **{m: {0, 1} for m in _TS_METHODS}}
# comprehension macros: name -> argument count (a variable name and an expression)
MACROS = {"all": 2, "exists": 2, "exists_one": 2, "map": 2, "filter": 2}
