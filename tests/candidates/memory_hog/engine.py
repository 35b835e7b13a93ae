"""Allocates without bound once asked to generate."""


class HogEngine:
    async def generate(self, request):
        hoard = []
        while True:
            hoard.append(bytearray(64 * 1024 * 1024))  # bytearray zero-fills: the pages are real
        yield None

    async def close(self):
        pass


def create_engine(model_dir, device, knobs):
    return HogEngine()
