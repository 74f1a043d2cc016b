"""The studies: scripts that answered one question about the method (a decision rule's window, the x1
ceiling, convergence against DIP, the embedding's length, the papers' robustness runs); their results
and the decisions they informed are in docs/benchmarks.md.
"""
