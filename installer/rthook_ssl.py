"""PyInstaller runtime hook: give the bundled OpenSSL a CA store it can find.

On Windows Python's ssl module reads the system certificate store, and nothing is needed.
Elsewhere the bundled libssl looks where it was built to look (``/usr/lib/ssl`` on Debian,
``/etc/pki/tls`` on Fedora...). When neither that file nor that folder exists on this
machine, and the user set no ``SSL_CERT_FILE``/``SSL_CERT_DIR``, point OpenSSL at the bundled
certifi CA bundle, so HTTPS checks verify certificates instead of failing on every host.
"""

import os
import sys


def _use_certifi_when_system_store_missing() -> None:
    if sys.platform == "win32":
        return
    if os.environ.get("SSL_CERT_FILE") or os.environ.get("SSL_CERT_DIR"):
        return
    import ssl

    paths = ssl.get_default_verify_paths()
    if (paths.cafile and os.path.isfile(paths.cafile)) or (
        paths.capath and os.path.isdir(paths.capath) and os.listdir(paths.capath)
    ):
        return
    try:
        import certifi
    except ImportError:
        return
    os.environ["SSL_CERT_FILE"] = certifi.where()


_use_certifi_when_system_store_missing()
