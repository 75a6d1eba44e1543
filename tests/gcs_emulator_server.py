"""Runs gcp-storage-emulator with GCS's generation preconditions.

  python tests/gcs_emulator_server.py start --host=... --port=... --in-memory

The emulator ignores `ifGenerationMatch` / `ifGenerationNotMatch` and sends
no `x-goog-generation` header with object data. Tensorstore's OCDBT driver
(orbax's default checkpoint format) relies on both: it rereads its manifest
with `ifGenerationNotMatch` and parses the generation of what it got, so a
checkpoint of more than a few arrays fails with 'Malformed StorageGeneration'.
Real GCS honours them; this wrapper adds them to the object reads, uploads
and deletes, and otherwise runs the emulator unchanged.
"""

from http import HTTPStatus
import sys

from gcp_storage_emulator import server
from gcp_storage_emulator.exceptions import NotFound
from gcp_storage_emulator.handlers import objects


def _generation(storage, bucket, name):
  try:
    return int(storage.get_file_obj(bucket, name)['generation'])
  except NotFound:
    return None


def _query_int(request, key):
  v = request.query.get(key)
  return int(v[0]) if v else None


def _object_name(request):
  name = request.params.get('object_id')
  if name is None and request.query.get('name'):
    name = request.query['name'][0]
  return name


def _failed(request, response, storage, reading):
  """Sets the status and returns True when a precondition fails."""
  match = _query_int(request, 'ifGenerationMatch')
  not_match = _query_int(request, 'ifGenerationNotMatch')
  if match is None and not_match is None:
    return False
  gen = _generation(storage, request.params['bucket_name'],
                    _object_name(request))
  if match is not None and (gen or 0) != match:
    response.status = HTTPStatus.PRECONDITION_FAILED
    return True
  if not_match is not None and gen is not None and gen == not_match:
    response.status = (HTTPStatus.NOT_MODIFIED if reading
                       else HTTPStatus.PRECONDITION_FAILED)
    return True
  return False


def _with_generation(handler, reading):
  def wrapped(request, response, storage, *args, **kwargs):
    if _failed(request, response, storage, reading):
      return None
    if reading:
      gen = _generation(storage, request.params['bucket_name'],
                        _object_name(request))
      if gen is not None:
        response['x-goog-generation'] = str(gen)
        response['x-goog-metageneration'] = '1'
    return handler(request, response, storage, *args, **kwargs)
  return wrapped


def patch():
  wrapped = {
      objects.download: _with_generation(objects.download, True),
      objects.get: _with_generation(objects.get, True),
      objects.insert: _with_generation(objects.insert, False),
      objects.delete: _with_generation(objects.delete, False),
  }
  for _, handlers in server.HANDLERS:
    for method, fn in list(handlers.items()):
      if fn in wrapped:
        handlers[method] = wrapped[fn]
  # objects.get serves ?alt=media through the module's own download.
  objects.download = wrapped[objects.download]


if __name__ == '__main__':
  patch()
  from gcp_storage_emulator import __main__ as emulator_main  # pylint: disable=g-import-not-at-top
  sys.exit(emulator_main.main())
