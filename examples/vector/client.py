"""Split two long vectors into chunks, add them on the workers, and join the result."""

from __future__ import annotations

import random

from examples.vector.tasks import add

SIZE, CHUNK = 100_000, 1_000


def main() -> None:
    x = [random.random() for _ in range(SIZE)]
    y = [random.random() for _ in range(SIZE)]
    chunks = [(x[i : i + CHUNK], y[i : i + CHUNK]) for i in range(0, SIZE, CHUNK)]
    total = [value for part in add.map(chunks) for value in part]
    assert total == [a + b for a, b in zip(x, y, strict=True)]
    print(f"added two vectors of {SIZE} elements in {len(chunks)} tasks")
    print("one more, the Celery way:", add.delay([1, 2], [3, 4]).get(timeout=30))


if __name__ == "__main__":
    main()
