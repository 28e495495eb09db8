"""The stand-in judge on the learnable world (issue 28): pairwise agreement with the truth reader.

Image sets (``vprefer.world.judge_check.image_sets``: one plain world prompt each, every attribute right
about half the time, artefacts and the badge varied) are scored by the stand-in judge's own function
(``vprefer.judge_server.scoring.judge``, what ``vprefer judge-server`` answers) at several noise levels,
with and without a first-position bias. For each aspect: the share of pairs the truth decides that the
judge's 1-5 scores order the same way (a judge tie counts half), and the share it ties. ``all_right``:
pairs where exactly one image has every named attribute right, judged on prompt following.

    python benchmarks/world_judge.py [--sets 60 --images 4 --size 32 --noise 0,0.5,1,1.5 --bias 0.4]
"""

from __future__ import annotations

import argparse

from vprefer.world.judge_check import ASPECTS, agreement, image_sets, stand_in_judge


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sets", type=int, default=60)
    ap.add_argument("--images", type=int, default=4)
    ap.add_argument("--size", type=int, default=32)
    ap.add_argument("--noise", default="0,0.5,1,1.5")
    ap.add_argument("--bias", type=float, default=0.4)
    ap.add_argument("--held-out", action="store_true", help="held-out prompts instead of training ones")
    args = ap.parse_args()
    sets = image_sets(args.sets, args.images, seed=0, size=args.size, held_out=args.held_out)
    cols = (*ASPECTS, "all_right")
    first = agreement(stand_in_judge(), sets)
    print(f"{args.sets} sets of {args.images} at {args.size} px; truth-decided pairs: "
          + ", ".join(f"{a} {first[a]['pairs']}" for a in cols))
    print(f"{'noise':>6} {'bias':>5} " + " ".join(f"{a:>17}" for a in cols))
    for noise in (float(x) for x in args.noise.split(",")):
        for bias in sorted({0.0, args.bias}):
            res = agreement(stand_in_judge(noise=noise, position_bias=bias), sets)
            print(f"{noise:>6.2f} {bias:>5.2f} " + " ".join(
                f"{res[a]['agreement']:>8.3f} (tie {res[a]['judge_ties']:.2f})" for a in cols))


if __name__ == "__main__":
    main()
