"""caffelike"""
