"""The inner loop: implement -> judge -> evaluate, for one candidate (`loop.run_inner_loop`)."""
