"""What the scripts in the checkout's benchmarks/ folder share: docs/results.md's sections (results), the data
sets every quality benchmark runs on (datasets), arms trained and tabled alike (arms) and a command's wall
time and memory (process). In the package so the scripts import it like any other code, not by bare name
off sys.path; nothing in lesionlab's commands imports it."""
