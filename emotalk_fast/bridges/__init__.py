"""Frames out to other programs: Unreal's Live Link Face (livelink.py), VMC receivers such as
VSeeFace (vmc.py), a paced live sender for both (live.py), and the Blender add-on (blender.py:
one file on the standard library and bpy, installed into Blender; the library never imports it).
"""
