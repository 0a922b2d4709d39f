"""Is training k small models in one vmapped program (cnn/multi.py) faster than k steps
one after another?  Alternating A/B rounds in one process (noise here is +-10-15 %).

    python -m scripts.benchmark_multi --model resnet20 --k 4 --width 8 --batch 128

A: the engine's compiled single-model step (`train.compile_steps`), called for k
   separate train states in turn (what k sequential runs do per iteration).
B: `cnn.multi`'s one step for the k states stacked (one program, one dispatch).
Both include the on-device input pipeline. Reports images per second (k x batch per
iteration) of each round, the medians, and the speed-up B / A.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time

from cnn.errors import exit_on_user_error


def build_configs(args):
  from cnn import config as config_lib
  configs = []
  for seed in range(args.k):
    c = config_lib.defaults()
    c.seed = seed
    c.model.name = args.model
    if args.width:
      c.model.width = args.width
    c.model.conv_impl = args.conv_impl
    c.data.source = args.data
    c.data.augment = "cifar"
    c.optim.name = "momentum"
    c.optim.weight_decay = 1e-4
    c.train.batch_size = args.batch
    c.train.log_grad_norms = True
    configs.append(c)
  return configs


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(prog="python -m scripts.benchmark_multi",
                                   description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--model", default="resnet20")
  parser.add_argument("--k", type=int, default=4, help="models trained together")
  parser.add_argument("--width", type=int, default=8, help="model.width (0: default)")
  parser.add_argument("--batch", type=int, default=128)
  parser.add_argument("--data", default="cifar10")
  parser.add_argument("--conv_impl", default="auto")
  parser.add_argument("--steps", type=int, default=3, help="iterations per round")
  parser.add_argument("--rounds", type=int, default=5, help="A/B rounds")
  args = parser.parse_args(sys.argv[1:] if argv is None else argv)
  with exit_on_user_error():
    import jax
    from cnn import multi, train
    configs = build_configs(args)
    runs = multi.build_runs(configs)

    # A: one compiled single-model step, k states.
    t0 = time.time()
    single_run = train.build_run(configs[0])
    state0, shardings = train.init_state(single_run)
    step_a, _, (x_all, y_all) = train.compile_steps(single_run, shardings)
    states_a = [state0] + [
        train.init_state(train.build_run(c))[0] for c in configs[1:]]
    for _ in range(2):   # the second call catches any re-specialisation
      for i in range(args.k):
        states_a[i], _ = step_a(states_a[i], x_all, y_all)
    jax.block_until_ready(states_a)
    compile_a = time.time() - t0

    # B: the vmapped step over the stacked states.
    t0 = time.time()
    states_b = multi.init_states(runs)
    step_b = multi.make_multi_step(runs)
    data = tuple((x_all, y_all) for _ in runs)
    for _ in range(2):
      states_b, _ = step_b(states_b, data)
    jax.block_until_ready(states_b)
    compile_b = time.time() - t0
    print(f"{args.model} width {args.width or 'default'} batch {args.batch}, k={args.k}, "
          f"{jax.devices()[0].platform}: first two steps (compiling) A {compile_a:.1f} s, "
          f"B {compile_b:.1f} s", flush=True)

    images = args.k * args.batch * args.steps
    rates = {"A": [], "B": []}
    for r in range(args.rounds):
      t0 = time.time()
      for _ in range(args.steps):
        for i in range(args.k):
          states_a[i], _ = step_a(states_a[i], x_all, y_all)
      jax.block_until_ready(states_a)
      rates["A"].append(images / (time.time() - t0))
      t0 = time.time()
      for _ in range(args.steps):
        states_b, _ = step_b(states_b, data)
      jax.block_until_ready(states_b)
      rates["B"].append(images / (time.time() - t0))
      print(f"round {r + 1}: A {rates['A'][-1]:.1f} img/s   B {rates['B'][-1]:.1f} img/s",
            flush=True)
    a, b = statistics.median(rates["A"]), statistics.median(rates["B"])
    print(f"median: A (k sequential steps) {a:.1f} img/s, B (one vmapped step) {b:.1f} "
          f"img/s, speed-up B/A {b / a:.2f}x")
  return 0


if __name__ == "__main__":
  sys.exit(main())
