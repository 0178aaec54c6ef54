"""The service runs without torch: every ``service.*`` module imports, and the app starts and serves the
tiny ONNX model, in an interpreter where ``import torch`` fails."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

from drrn.paths import PROJECT_ROOT

SCRIPT = textwrap.dedent(
    """
    import asyncio, importlib, io, pkgutil, sys
    sys.modules["torch"] = None  # any `import torch` now raises ImportError

    import service
    names = sorted(m.name for m in pkgutil.iter_modules(service.__path__, "service."))
    for name in names:
        importlib.import_module(name)

    import httpx
    from PIL import Image
    from service.app import create_app
    from service.settings import Settings

    app = create_app(Settings(model_dir=sys.argv[1], models=["fast"], providers="cpu", tile=32,
                              max_batch=2, intra_op_threads=1, cpu_workers=1))

    async def main():
        buf = io.BytesIO()
        Image.new("RGB", (12, 10), (200, 100, 50)).save(buf, "PNG")
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://drrn") as client:
                while (await client.get("/readyz")).status_code != 200:
                    await asyncio.sleep(0.01)
                r = await client.post("/upscale?scale=2", content=buf.getvalue(),
                                      headers={"content-type": "image/png"})
                assert r.status_code == 200, r.text
                assert Image.open(io.BytesIO(r.content)).size == (24, 20)

    asyncio.run(main())
    assert sys.modules["torch"] is None
    print("imported", len(names), "modules:", " ".join(names))
    """
)


def test_service_imports_and_serves_without_torch(tiny_repo: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(tiny_repo)],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "service.app" in proc.stdout and "service.main" in proc.stdout
