"""`make bench`: every benchmark with its default settings, one table each."""
from bench import field_throughput, stage_times

print("== field throughput: samples/s, forward + backward + Adam step ==")
field_throughput.main([])
print("\n== ingest / masks / poses wall time on real captures ==")
stage_times.main([])
