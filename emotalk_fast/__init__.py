"""emotalk_fast"""
