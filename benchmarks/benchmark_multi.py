"""Is training k small models in one program (cnn/multi.py) faster than k steps one
after another?  Alternating rounds in one process (noise here is +-10-15 %).

    python -m benchmarks.benchmark_multi --model resnet20 --k 4 --width 8 --batch 128

sequential: the engine's compiled single-model step (`train.compile_steps`), called
    for k separate train states in turn (what k sequential runs do per iteration).
vmap: `cnn.multi`'s step vmapped over the k stacked states (one program, one dispatch,
    k-wide grouped convolutions).
unroll: `cnn.multi`'s step written out once per model in one program.
All include the on-device input pipeline. Reports images per second (k x batch per
iteration) of each round, the medians, and the speed-ups over sequential.
"""
from __future__ import annotations

import statistics
import sys
import time

from cnn import cli
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
  parser = cli.parser("benchmarks.benchmark_multi", __doc__)
  parser.add_argument("--model", default="resnet20")
  parser.add_argument("--k", type=int, default=4, help="models trained together")
  parser.add_argument("--width", type=int, default=8, help="model.width (0: default)")
  parser.add_argument("--batch", type=int, default=128)
  parser.add_argument("--data", default="cifar10")
  parser.add_argument("--conv_impl", default="auto")
  parser.add_argument("--steps", type=int, default=3, help="iterations per round")
  parser.add_argument("--rounds", type=int, default=5, help="alternating rounds")
  parser.add_argument("--impls", nargs="+", default=["vmap", "unroll"],
                      choices=["vmap", "unroll"], help="cnn.multi variants to time")
  args = parser.parse_args(sys.argv[1:] if argv is None else argv)
  with exit_on_user_error():
    import jax
    from cnn import train
    configs = build_configs(args)
    runs = train.build_runs(configs)

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

    # B / C: cnn.multi's step over the stacked states, vmapped / unrolled.
    multi_steps, multi_states, compile_times = {}, {}, {}
    data = tuple((x_all, y_all) for _ in runs)
    for impl in args.impls:
      t0 = time.time()
      multi_states[impl] = train.init_stacked(runs)
      multi_steps[impl] = train.stacked_program(runs, impl).step
      for _ in range(2):
        multi_states[impl], _ = multi_steps[impl](multi_states[impl], data)
      jax.block_until_ready(multi_states[impl])
      compile_times[impl] = time.time() - t0
    print(f"{args.model} width {args.width or 'default'} batch {args.batch}, k={args.k}, "
          f"{jax.devices()[0].platform}: first two steps (compiling) sequential "
          f"{compile_a:.1f} s, " + ", ".join(f"{i} {t:.1f} s" for i, t in
                                             compile_times.items()), flush=True)

    images = args.k * args.batch * args.steps
    rates = {"sequential": [], **{impl: [] for impl in args.impls}}
    for r in range(args.rounds):
      t0 = time.time()
      for _ in range(args.steps):
        for i in range(args.k):
          states_a[i], _ = step_a(states_a[i], x_all, y_all)
      jax.block_until_ready(states_a)
      rates["sequential"].append(images / (time.time() - t0))
      for impl in args.impls:
        t0 = time.time()
        for _ in range(args.steps):
          multi_states[impl], _ = multi_steps[impl](multi_states[impl], data)
        jax.block_until_ready(multi_states[impl])
        rates[impl].append(images / (time.time() - t0))
      print(f"round {r + 1}: " + "   ".join(f"{n} {v[-1]:.1f} img/s" for n, v in
                                             rates.items()), flush=True)
    base = statistics.median(rates["sequential"])
    print(f"median img/s: sequential (k steps) {base:.1f}; " + "; ".join(
        f"{impl} (one step) {statistics.median(rates[impl]):.1f}, speed-up "
        f"{statistics.median(rates[impl]) / base:.2f}x" for impl in args.impls))
  return 0


if __name__ == "__main__":
  sys.exit(main())
