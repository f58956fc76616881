"""``cel:`` conditions: CEL policies over the request, KrakenD's vocabulary included.

Imports go one way, top to bottom:

- :mod:`.clauses`    which clause of a false ``&&`` policy failed (``condroute explain`` only)
- :mod:`.policy`     a compiled policy (inputs read, result cache, evaluation), ``compile_policy``
                     and the ``cel:`` condition of a rules file (``compile_cel_condition``)
- :mod:`.check`      the checker: located load errors, and exactly which inputs an expression reads
- :mod:`.cost`       the iteration budget: bounded at load, measured per request
- :mod:`.parse`      celpy's parser, and the small tree the checker walks
- :mod:`.engines`    which engine runs: :mod:`.engine_celpy` (with :mod:`.engine_celpy_spec`) or
                     :mod:`.engine_celexpr`; :mod:`.outcome` the words of their answers
- :mod:`.helpers`    the helper functions (hasHeader, getCookie, ipInCidr, geoIP...), one table
- :mod:`.context`    the evaluation under way, and the identity lookups a policy is given
- :mod:`.vocabulary` the variables and standard functions an expression may use
"""
