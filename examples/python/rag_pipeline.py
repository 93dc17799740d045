"""A RAG ingestion pipeline on larder.

Three stages, each leasing only what it needs:
  1. "pdf": a PDF text extractor (PyMuPDF) takes the text layer and renders every page
     without one to an image;
  2. "ocr": Tesseract engines (libtesseract, a pool of 2) read those page images;
  3. "vision": an image-analysis client, loaded only for this stage and unloaded as soon as
     the stage is over (ttl 0); a pool of 3 clients serves concurrent jobs.

The example makes its own PDF (a text page and a scanned page that only OCR can read),
runs 6 jobs at once, one of them with a corrupt page image, and checks that the failing job
released every lease and that the vision client went away after its stage.

    PYTHONPATH=build/python /usr/bin/python3 examples/python/rag_pipeline.py
"""
import ctypes
import ctypes.util
import os
import sys
import tempfile
import threading
import time

import fitz  # PyMuPDF
import numpy as np

import larder

TEXT_PAGE = "larder keeps heavy components out of memory until they are needed."
SCANNED_WORDS = "INVOICE 4711 TOTAL 250 EUR"


def make_pdf(path):
    """A two-page PDF: one page with a text layer, one that is only a picture of text."""
    doc = fitz.open()
    page = doc.new_page()
    page.insert_text((72, 72), TEXT_PAGE, fontsize=11)
    src = fitz.open()
    s = src.new_page(width=500, height=120)
    s.insert_text((20, 70), SCANNED_WORDS, fontsize=28)
    scan = s.get_pixmap(dpi=200, colorspace=fitz.csGRAY).tobytes("png")
    page = doc.new_page()
    page.insert_image(fitz.Rect(36, 36, 36 + 500, 36 + 120), stream=scan)
    doc.save(path)


class PdfExtractor:
    """Stage 1: the text layer of each page, and an image of each page that has none."""

    def __init__(self):
        self.fitz = fitz

    def extract(self, path, dpi=200):
        pages = []
        with self.fitz.open(path) as doc:
            for page in doc:
                text = page.get_text().strip()
                image = None
                if not text:
                    image = page.get_pixmap(dpi=dpi, colorspace=self.fitz.csGRAY).tobytes("png")
                pages.append({"text": text, "image": image})
        return pages


class Tesseract:
    """Stage 2: libtesseract's C API. The model is the library; each instance one engine
    with the English model loaded (engines are not shared between threads)."""

    def __init__(self):
        name = ctypes.util.find_library("tesseract")
        if not name:
            raise OSError("libtesseract is not installed")
        lib = ctypes.CDLL(name)
        lib.TessBaseAPICreate.restype = ctypes.c_void_p
        lib.TessBaseAPIInit3.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_char_p]
        lib.TessBaseAPISetImage.argtypes = [ctypes.c_void_p, ctypes.c_char_p] + [ctypes.c_int] * 4
        lib.TessBaseAPISetSourceResolution.argtypes = [ctypes.c_void_p, ctypes.c_int]
        lib.TessBaseAPIGetUTF8Text.argtypes = [ctypes.c_void_p]
        lib.TessBaseAPIGetUTF8Text.restype = ctypes.c_void_p
        lib.TessDeleteText.argtypes = [ctypes.c_void_p]
        lib.TessBaseAPIEnd.argtypes = [ctypes.c_void_p]
        lib.TessBaseAPIDelete.argtypes = [ctypes.c_void_p]
        self.lib = lib

    def engine(self):
        return Engine(self.lib)


class Engine:
    """One Tesseract engine with the English model loaded (engines are not shared)."""

    def __init__(self, lib):
        self.lib = lib
        self.api = lib.TessBaseAPICreate()
        if lib.TessBaseAPIInit3(self.api, None, b"eng") != 0:
            lib.TessBaseAPIDelete(self.api)
            raise RuntimeError("Tesseract could not load its 'eng' model")

    def close(self):
        self.lib.TessBaseAPIEnd(self.api)
        self.lib.TessBaseAPIDelete(self.api)

    def recognize(self, png, dpi=200):
        pix = fitz.Pixmap(png)
        self.lib.TessBaseAPISetImage(self.api, pix.samples, pix.width, pix.height, pix.n,
                                     pix.stride)
        self.lib.TessBaseAPISetSourceResolution(self.api, dpi)
        p = self.lib.TessBaseAPIGetUTF8Text(self.api)
        text = ctypes.string_at(p).decode("utf-8", "replace")
        self.lib.TessDeleteText(p)
        return text


class VisionClient:
    """Stage 3: page analysis (ink coverage and the bounding box of the content)."""

    lock = threading.Lock()
    alive = 0
    most_alive = 0

    def __init__(self, shared):
        self.shared = shared
        with VisionClient.lock:
            VisionClient.alive += 1
            VisionClient.most_alive = max(VisionClient.most_alive, VisionClient.alive)

    def close(self):
        with VisionClient.lock:
            VisionClient.alive -= 1

    def analyze(self, png):
        pix = fitz.Pixmap(png)  # raises on bytes that are no image
        a = np.frombuffer(pix.samples, dtype=np.uint8).reshape(pix.height, pix.width, pix.n)
        ink = a[..., 0] < 128
        ys, xs = np.nonzero(ink)
        box = [int(xs.min()), int(ys.min()), int(xs.max()), int(ys.max())] if len(xs) else None
        return {"ink": float(ink.mean()), "box": box, "size": [pix.width, pix.height]}


def build(m, vision_loads):
    m.define("pdf", PdfExtractor, memory="32MiB")
    m.define("ocr", Tesseract, memory="64MiB", instances=2,
             new_instance=lambda tesseract: tesseract.engine(),
             free_instance=lambda tesseract, engine: engine.close())

    def load_vision():
        vision_loads.append(1)
        return {"lut": np.arange(256, dtype=np.uint8)}  # what the clients share

    m.define("vision", load_vision, memory="16MiB", ttl=0, instances=3,
             new_instance=VisionClient, free_instance=lambda shared, client: client.close())


def ingest(m, path, corrupt=False):
    with m.acquire("pdf") as pdf:
        pages = pdf.extract(path)
    images = [p["image"] for p in pages if p["image"]]
    with m.acquire("ocr") as engine:
        ocr_texts = [engine.recognize(png) for png in images]
    if corrupt:
        images = images + [b"\x89PNG this page was truncated in transit"]
    with m.acquire("vision") as client:
        analyses = [client.analyze(png) for png in images]
    return {"text": [p["text"] for p in pages if p["text"]], "ocr": ocr_texts,
            "vision": analyses}


def main():
    vision_loads = []
    with tempfile.TemporaryDirectory() as tmp, larder.Manager(budget="512MiB", ttl="5m") as m:
        path = os.path.join(tmp, "scan.pdf")
        make_pdf(path)
        build(m, vision_loads)

        results, errors = [None] * 6, [None] * 6

        def job(i):
            try:
                results[i] = ingest(m, path, corrupt=(i == 5))
            except Exception as e:  # noqa: BLE001 - the failing job is part of the example
                errors[i] = e

        threads = [threading.Thread(target=job, args=(i,)) for i in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()

        for i in range(5):
            assert errors[i] is None, errors[i]
            r = results[i]
            assert "heavy components" in r["text"][0], r["text"]
            assert "INVOICE" in r["ocr"][0] and "4711" in r["ocr"][0], r["ocr"]
            assert r["vision"][0]["ink"] > 0 and r["vision"][0]["box"], r["vision"]
        # Stage 3 of job 5 failed on its corrupt page, and released everything all the same.
        assert isinstance(errors[5], RuntimeError), repr(errors[5])
        reg = m.registry()
        assert all(c["leases"] == 0 for c in reg.values()), reg
        # ttl 0: the vision clients went as soon as their stage was over.
        deadline = time.monotonic() + 60
        while m.registry()["vision"]["state"] != "unloaded" and time.monotonic() < deadline:
            time.sleep(0.01)
        reg = m.registry()
        assert reg["vision"]["state"] == "unloaded", reg["vision"]
        assert reg["vision"]["instances"]["max"] == 3
        # The pool never held more than 3 clients, and every one was closed.
        assert 1 <= VisionClient.most_alive <= 3, VisionClient.most_alive
        assert VisionClient.alive == 0, VisionClient.alive
        assert reg["pdf"]["state"] == "ready" and reg["ocr"]["state"] == "ready"
        print(f"ingested 5 documents, 1 failed in stage 3 ({errors[5]})")
        print(f"vision loads {len(vision_loads)}, at most {VisionClient.most_alive} clients; "
              f"ocr engines {reg['ocr']['instances']['created']}")
        for name, c in sorted(reg.items()):
            print(f"  {name:7} {c['state']:9} loads {c['loads']} "
                  f"load {c['load_ms']['last']:.1f} ms")
    print("ok")
    return 0


if __name__ == "__main__":
    sys.exit(main())
