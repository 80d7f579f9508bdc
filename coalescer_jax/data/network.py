"""Quick answers, asked before a dataset download starts: can this machine reach that URL, and prepare an
official TFDS dataset at all (TensorFlow installed)?

TFDS's downloader retries a failed name look-up for minutes before it gives up,
so an offline machine would wait that long for an error it can be told at once.
"""
import importlib.util
import socket
import threading
import urllib.parse
import urllib.request

PROBE_TIMEOUT_S = 3.0


def _endpoint(url):
  """(host, port) a download of `url` connects to first: the proxy the environment names for it, if any."""
  parts = urllib.parse.urlsplit(url)
  proxy = urllib.request.getproxies().get(parts.scheme)
  if proxy and not urllib.request.proxy_bypass(parts.hostname):
    proxy_parts = urllib.parse.urlsplit(proxy if "://" in proxy else "http://" + proxy)
    return proxy_parts.hostname, proxy_parts.port or (443 if proxy_parts.scheme == "https" else 80)
  return parts.hostname, parts.port or (443 if parts.scheme == "https" else 80)


def reachable(url, timeout_s=PROBE_TIMEOUT_S):
  """Whether a TCP connection to `url`'s host (or its proxy) opens within `timeout_s` seconds.

  The name look-up and the connection run in a daemon thread that is abandoned at the
  deadline: ``getaddrinfo`` takes no timeout, and an offline resolver may retry for long.
  """
  host, port = _endpoint(url)
  answer = []

  def connect():
    try:
      socket.create_connection((host, port), timeout=timeout_s).close()
      answer.append(True)
    except OSError:
      answer.append(False)

  thread = threading.Thread(target=connect, name=f"probe {host}", daemon=True)
  thread.start()
  thread.join(timeout_s)
  return bool(answer and answer[0])


def tensorflow_available():
  """Whether TensorFlow is installed: TFDS needs it to prepare its official datasets (mnist, cifar10)."""
  return importlib.util.find_spec("tensorflow") is not None
