"""Would bfloat16 pay? The bundled model's stateful step in float32 and in mixed bfloat16.

    python benchmarks/bfloat16.py [--repeats 300] [--frames 200]

Builds the default architecture under Keras's ``mixed_bfloat16`` policy with the bundled
model's weights, runs both on the same synthetic frames and prints how far the bfloat16
predictions and per-frame errors are from the float32 ones, then times one tick of each in
alternating rounds (p50).
"""

from __future__ import annotations

import argparse
import time

import numpy as np


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--repeats", type=int, default=300)
    parser.add_argument("--frames", type=int, default=200)
    args = parser.parse_args()

    from forecaster.logs import import_tensorflow_quietly

    import_tensorflow_quietly()
    import keras

    from forecaster.model.artifact import bundled_model_path, load_model
    from forecaster.model.builders import build_model, frame_size
    from forecaster.model.step import Stepper
    from forecaster.sources.preprocess import to_gray_resized
    from forecaster.sources.readers import open_source

    full, card = load_model(bundled_model_path())
    height, width = frame_size(full)
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        half = build_model(card.arch, height, width)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    half.set_weights(full.get_weights())
    steppers = {"float32": Stepper(full), "bfloat16": Stepper(half)}

    images = []
    with open_source(f"synthetic:?fps=0&width={width}&height={height}&frames={args.frames}") as source:
        while (frame := source.read()) is not None:
            images.append(to_gray_resized(frame.image, (height, width)))
    frames = (np.stack(images)[None, :, :, :, None] / 255.0).astype(np.float32)
    predictions = {
        name: np.asarray(stepper.run(frames, stepper.initial_state(1))[0], np.float32)
        for name, stepper in steppers.items()
    }
    gap = np.abs(predictions["float32"] - predictions["bfloat16"])
    mse = {name: ((p[0, :-1] - frames[0, 1:]) ** 2).mean(axis=(1, 2, 3)) for name, p in predictions.items()}
    relative = np.abs(mse["float32"] - mse["bfloat16"]) / mse["float32"]
    print(f"predictions: max |float32 - bfloat16| {gap.max():.4f}, mean {gap.mean():.5f}")
    print(f"per-frame mse: bfloat16 off by up to {100 * relative.max():.1f}% "
          f"(median {100 * np.median(relative):.1f}%)")

    tick = frames[:, :1]
    samples: dict[str, list[float]] = {name: [] for name in steppers}
    for stepper in steppers.values():  # compile and warm up
        for _ in range(20):
            stepper.run(tick, stepper.initial_state(1))
    for _ in range(10):
        for name, stepper in steppers.items():
            state = stepper.initial_state(1)
            for _ in range(max(1, args.repeats // 10)):
                began = time.perf_counter()
                _, state = stepper.run(tick, state)
                samples[name].append(time.perf_counter() - began)
    for name, values in samples.items():
        print(f"{name:>9} tick p50 {1000 * np.median(values):.3f} ms")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
