"""A real RTSP server on loopback for edgecap's RTSP source tests: GStreamer's gst-rtsp-server
streaming a photograph as H.264 (x264) or MJPEG at 10 frames per second.

    python3 tests/rtsp/server.py PORT IMAGE.jpg

serves rtsp://127.0.0.1:PORT/h264 and rtsp://127.0.0.1:PORT/mjpeg, prints "ready" once it
listens, and runs until killed. Needs python3-gi, gir1.2-gst-rtsp-server-1.0 and GStreamer's
base, good and ugly (x264enc) plugins.
"""

import sys

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstRtspServer", "1.0")
from gi.repository import GLib, Gst, GstRtspServer  # noqa: E402

SOURCE = (
    "filesrc location={image} ! jpegdec ! videoconvert ! videoscale ! "
    "video/x-raw,format=I420,width=320,height=240 ! imagefreeze ! video/x-raw,framerate=10/1"
)
PAYLOADS = {
    # A key frame every second, as IP cameras send.
    "h264": "x264enc tune=zerolatency speed-preset=ultrafast key-int-max=10 ! rtph264pay name=pay0 pt=96",
    "mjpeg": "jpegenc quality=90 ! rtpjpegpay name=pay0 pt=26",
}


def main():
    port, image = sys.argv[1], sys.argv[2]
    Gst.init(None)
    server = GstRtspServer.RTSPServer()
    server.set_address("127.0.0.1")
    server.set_service(port)
    mounts = server.get_mount_points()
    for path, payload in PAYLOADS.items():
        factory = GstRtspServer.RTSPMediaFactory()
        factory.set_launch("( " + SOURCE.format(image=image) + " ! " + payload + " )")
        factory.set_shared(True)
        mounts.add_factory("/" + path, factory)
    if server.attach(None) == 0:
        sys.exit(f"cannot listen on 127.0.0.1:{port}")
    print("ready", flush=True)
    GLib.MainLoop().run()


if __name__ == "__main__":
    main()
